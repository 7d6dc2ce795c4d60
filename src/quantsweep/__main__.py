from quantsweep.cli import main

if __name__ == "__main__":  # not when a spawned solver process imports it (execution/stability_pipeline.py)
    main()
