"""`scoregate`: the command line for the people who run, call and review the gateway."""
