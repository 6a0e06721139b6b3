"""`python3 -m control_plane ...`: set up the environment on a fresh machine, then run the CLI.

Outside the project's virtual environment this installs what is missing and re-executes itself
inside it; inside, it is the `visionguard` command.
"""

import sys

from control_plane.stack.environment import inside_venv, reexec_in_venv

if __name__ == "__main__":
    if not inside_venv():
        reexec_in_venv(sys.argv[1:])
    from control_plane.cli import main

    main()
