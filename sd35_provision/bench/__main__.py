"""``python -m sd35_provision.bench``: the same command as ``sd35-provision bench``."""

from sd35_provision.bench.commands import bench

if __name__ == "__main__":
    bench(prog_name="python -m sd35_provision.bench")
