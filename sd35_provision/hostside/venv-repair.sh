# Put a drifted venv back to its lock (deploys/python_env.py): remove what the lock lacks, reinstall the rest.
set -eu
remove=@remove@
if [ -n "$remove" ]; then
    @venv@/bin/python -m pip uninstall --quiet --yes @extras@
fi
@venv@/bin/python -m pip install --quiet @pip_options@ -r @lock@
