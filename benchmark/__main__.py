from benchmark.cli import main

if __name__ == "__main__":  # trial processes are spawned and import this module too
    raise SystemExit(main())
