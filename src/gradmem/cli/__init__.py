"""The `gradmem` command line (gradmem.cli.main); the top layer, free to import any other."""
