from facemint.errors import Conflict, Forbidden, NotFound


class UserNotFound(NotFound):
    code = "user_not_found"
    title = "User not found"


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email already registered"


class UserFrozen(Forbidden):
    code = "user_frozen"
    title = "User frozen"


class PrivilegeNotHeld(Forbidden):
    """A caller tried to hand a user (by creating it, a role, a password, an unfreeze) scopes it does not hold."""

    code = "privilege_not_held"
    title = "Privilege not held"


class PlatformAdminOnly(Forbidden):
    """Operator and finance accounts are created and given privilege only by platform admins."""

    code = "platform_admin_only"
    title = "Platform admins only"
