"""What every stage uses, below them all (the standard library only): ``direction`` (the one
"best by direction" helper), ``redact`` (password masking), ``retry`` (the one retry loop, each
caller with its policy), ``background`` (background threads that give way), ``states`` (the job
states that cross modules). Import the modules themselves: this package imports nothing."""
