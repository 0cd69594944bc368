"""The one exception type for mistakes a user can fix, and the one way a command-line tool reports them.

Everything that validates user input (config fields, model names and options, dataset names, workdirs) raises
`UserError` with a message that says what is wrong and what to do. Every CLI (`python -m resnet_jax.main`,
`reproduce`, `analysis`, `benchmark`) runs its work inside `exit_on_error()`, which prints that message as a
single `error:` line and exits with status 2 (3 for a diverged run), before anything is compiled or written.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, NoReturn

#: Exit status of a command that refused its input (a `UserError`).
EXIT_USER_ERROR = 2
#: Exit status of a training run stopped because the loss became NaN/inf (the message names the step).
EXIT_DIVERGED = 3


class UserError(ValueError):
  """A mistake in user input; the message says what to do about it."""


def fail(message, status: int = EXIT_USER_ERROR) -> NoReturn:
  """Prints `error: message` on stderr and exits with `status`."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
  """Turns a `UserError` into one `error:` line and exit status 2, a divergence (`FloatingPointError`) into
  one line and status 3. Anything else is a bug and keeps its traceback."""
  try:
    yield
  except UserError as e:
    fail(e)
  except FloatingPointError as e:
    fail(e, EXIT_DIVERGED)
