"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input, a missing asset or an impossible request: never a bug in transferlab."""


class MissingAssetError(UserError):
    """A packaged backbone or dataset is not installed; the message names what to install."""


class AssetIntegrityError(UserError):
    """A packaged file does not match its recorded sha256."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite, or stayed far above where it started: the learning rate is too high."""


class NotApplicable(UserError):
    """One strategy cannot run as the command asks (the LM objective on a head that trains no body), where the others
    can: the run records it as skipped and goes on, as it does for a strategy the backbone does not support."""
