from socklab.cli.main import main

main()
