from openhqm.cli import main

main()
