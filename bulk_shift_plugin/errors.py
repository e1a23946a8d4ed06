"""Exception types of the bulk-shift service, with messages a user can act on."""


class BulkShiftServiceError(Exception):
    """Base class of every error the service raises on purpose."""


class LabelStudioUnavailableError(BulkShiftServiceError):
    """Label Studio did not answer or answered with an error status."""


class LabelingConfigError(BulkShiftServiceError):
    """The project's labeling config has no usable ``<Choices>`` tag."""


class UnknownShiftError(BulkShiftServiceError, KeyError):
    """No shift transaction is stored under the given id."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "unknown shift"


class UnknownProposalError(BulkShiftServiceError, KeyError):
    """No pending proposal is stored under the given id."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "unknown proposal"


class ShiftStateError(BulkShiftServiceError):
    """The shift is in a state that does not allow the requested operation."""


class ShiftIncompleteError(BulkShiftServiceError):
    """After applying a shift, some tasks still lack their destination label."""


class ShiftBusyError(BulkShiftServiceError):
    """Another shift of the same project is being applied right now."""


class WebhookSecretError(BulkShiftServiceError):
    """A webhook request carried no secret or the wrong one."""


class WebhookPayloadError(BulkShiftServiceError):
    """A webhook request body is not a Label Studio event this service understands."""


class NamingError(BulkShiftServiceError):
    """The folder names a person submitted cannot be applied as given."""


class NamingBusyError(BulkShiftServiceError):
    """A naming of the same project is still running."""
