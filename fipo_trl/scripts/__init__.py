"""The `fipo-trl` commands, one module each (`train`, `eval`, `check`), and the recipe parser they share (`recipe`)."""
