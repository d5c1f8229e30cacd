"""The run layer: a run spec (validated in one place), the model and task it builds, and the
checkpoint folders a run saves and loads."""
