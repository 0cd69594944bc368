"""The one exception type for mistakes a user can fix.

Everything that validates user input (config fields, model names and options, dataset names, workdirs) raises
`UserError` with a message that says what is wrong and what to do. `python -m resnet_jax.main` prints that
message as a single line and exits with status 2, before anything is compiled or written.
"""


class UserError(ValueError):
  """A mistake in user input; the message says what to do about it."""
