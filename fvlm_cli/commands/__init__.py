"""One thin module per subcommand: parse options, call the library, render. No torch at import."""
