from facemint.errors import Unprocessable


class AdjustmentAboveCeiling(Unprocessable):
    code = "amount_above_ceiling"
    title = "Amount above the ceiling"
