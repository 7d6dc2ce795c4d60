"""Keeping library chatter (warnings, transformers logging and progress bars) off the user's terminal, in the
CLI's process and in every Ray worker."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence what ModelOpt and transformers print at import and per call; our own progress says it better."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", module=r"modelopt\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*not tested with current version of modelopt.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
