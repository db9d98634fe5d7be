"""``python -m vit_deploy.cli``: the same entry point as the ``vit-deploy`` script."""

from . import main

if __name__ == "__main__":
    main()
