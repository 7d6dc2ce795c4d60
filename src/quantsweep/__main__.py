from quantsweep.cli import main

main()
