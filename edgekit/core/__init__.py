"""What every room uses: errors, registries, typed fields, file safety, names, host facts, the child protocol."""
