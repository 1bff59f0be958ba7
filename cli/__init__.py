"""The `platform` command line: parse, build a config, call a package, print."""
