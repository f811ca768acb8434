from fvlm_cli.cli import main

main()
