from coea_cli.cli import main

main()
