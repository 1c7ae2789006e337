"""What every command runs on: its skeleton (`command`), run directory and lock
(`rundir`), one-line errors and progress (`console`), configuration records
(`config`), the recorded environment (`environment`), the device strategy
(`strategy`) and the export of trained networks (`serving`)."""
