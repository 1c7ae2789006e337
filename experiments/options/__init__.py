"""The absl flags that several commands share, one module per concern.

Each module defines its flags when it is imported and turns their values
into a record of `experiments.runtime.config` (``run_config()``,
``training_config()``, ...), which a command's `main` calls once; only the
command modules import these. A command's own flags stand at the top of
its module. Import only the concerns a command uses: a flag that is not
defined is refused on its command line.
"""
