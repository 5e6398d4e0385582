"""`python -m service`: service/process/serve.py."""

from service.process.serve import main

if __name__ == "__main__":  # worker processes import this module again; only the first serves
    main()
