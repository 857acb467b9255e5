"""Small console scripts."""

from trime import USER_DIR


def print_user_dir():
    """`trime-user-dir`: print the path to pass to fairseq's --user-dir."""
    print(USER_DIR)
