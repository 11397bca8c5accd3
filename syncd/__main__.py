"""`python -m syncd`: the same entry point as the `syncd` script."""

if __name__ == "__main__":
    from syncd.cli import entry

    entry()
