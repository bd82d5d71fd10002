"""`searnn-user-dir`: prints the path to pass as fairseq's --user-dir."""

import os


def user_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def print_user_dir() -> None:
    print(user_dir())
