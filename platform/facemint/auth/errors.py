from facemint.errors import Forbidden


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    title = "Missing scope"
