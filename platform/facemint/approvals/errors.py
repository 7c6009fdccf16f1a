from facemint.errors import Conflict, Forbidden, NotFound


class ApprovalNotFound(NotFound):
    code = "approval_not_found"
    title = "Recharge approval not found"


class SelfApproval(Forbidden):
    """Four eyes: the requester of a held request never approves it, whatever scopes they hold."""

    code = "self_approval"
    title = "Cannot approve your own request"


class ApprovalExpired(Conflict):
    code = "approval_expired"
    title = "Approval expired"


class ApprovalNotPending(Conflict):
    code = "approval_not_pending"
    title = "Approval already decided"
