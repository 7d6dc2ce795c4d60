from quantsweep.cli import main

if __name__ == "__main__":  # importing the module runs nothing (a module guard, as the console script has)
    main()
