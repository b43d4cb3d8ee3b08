"""Onboarding: first contact with a fresh box, up to a provisioned host in the spec.

1. First contact (``hostkeys``): the host key is shown as a SHA256 fingerprint and
   recorded in the spec's known_hosts only when the caller accepts it; a key
   other than the one recorded is refused.
2. Log in with the first-contact account (password or key), make the deploy
   account: the user, its authorized key, passwordless sudo when asked (``accounts``).
3. Check that the deploy account logs in with its key (and sudo works).
4. Add the host to the spec (comments and order kept), validate (the old file
   is put back if the result is invalid) (``specentry``), gather facts, apply to
   that host (``flow``, which runs the steps in order).

Every step looks before it changes, so onboarding a host twice changes nothing.
"""

from sd35_provision.onboarding.flow import Onboarded, OnboardResult, onboard, onboard_host
from sd35_provision.onboarding.request import OnboardError, OnboardRequest
from sd35_provision.onboarding.specentry import settings_from

__all__ = ["OnboardError", "OnboardRequest", "OnboardResult", "Onboarded", "onboard", "onboard_host", "settings_from"]
