from rotelab.cli import main

main()
