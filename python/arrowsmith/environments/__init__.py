"""Models' own Python environments (`--env-manager uv|virtualenv`): what a model asks for
(`spec`), the interpreters here (`interpreters`), Arrowsmith as a wheel (`wheel`), the
cache (`cache`), building (`build`), and the check of `--env-manager local` (`local`)."""
