"""The deploy layers, in the order a host is brought up.

Each takes the host's plan (sd35_provision/hostplan.py) and its recorder
(diffs, notes, what the service runs on): the runner adds them one by one;
``deploys/site.py`` calls them for plain ``pyinfra``. Later layers rely on
what earlier ones put in place.
"""

from sd35_provision.deploys.model import model_layer
from sd35_provision.deploys.nvidia import nvidia_driver
from sd35_provision.deploys.python_env import python_environment
from sd35_provision.deploys.release import release_layer
from sd35_provision.deploys.service import service_layer
from sd35_provision.deploys.system import system_layer

LAYERS = [
    system_layer,
    nvidia_driver,
    python_environment,
    model_layer,
    release_layer,
    service_layer,
]
