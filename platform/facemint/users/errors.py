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
