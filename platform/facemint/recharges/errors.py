from facemint.errors import BadRequest, NotFound, PayloadTooLarge, Unprocessable


class AmountAboveCeiling(Unprocessable):
    code = "amount_above_ceiling"
    title = "Amount above the ceiling"


class RecipientFrozen(Unprocessable):
    """The user to credit is frozen (the caller is fine: this is not an authentication failure)."""

    code = "user_frozen"
    title = "User frozen"


class RecipientTenantSuspended(Unprocessable):
    code = "tenant_suspended"
    title = "Tenant suspended"


class BatchNotFound(NotFound):
    code = "batch_not_found"
    title = "Recharge batch not found"


class ReasonRequired(Unprocessable):
    code = "reason_required"
    title = "Reason required"


class BatchRejected(Unprocessable):
    code = "batch_rejected"
    title = "Batch rejected, nothing applied"


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"
    title = "Batch too large"


class EmptyBatch(Unprocessable):
    code = "empty_batch"
    title = "Empty batch"


class InvalidBatch(Unprocessable):
    code = "invalid_batch"
    title = "Invalid batch document"


class InvalidCsv(BadRequest):
    code = "invalid_csv"
    title = "Unreadable CSV"


class InvalidCsvHeader(BadRequest):
    code = "invalid_csv_header"
    title = "Invalid CSV header"


class InvalidEncoding(BadRequest):
    code = "invalid_encoding"
    title = "Invalid encoding"


class InvalidJson(BadRequest):
    code = "invalid_json"
    title = "Invalid JSON"
