"""Inside a VM's guest: the guest agent's fsfreeze hook that holds the guest's applications."""
