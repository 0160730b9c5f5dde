"""One rich console for the whole program, and its progress bars."""
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

def _console() -> Console:
    """stderr; in Jupyter without ipywidgets (which rich's live displays need there) a plain stream, said
    once, so a notebook gets each bar's final state and no warning."""
    c = Console(stderr=True)
    if c.is_jupyter:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            import logging
            import warnings
            # tqdm (imported by Ray) and Ray's widgets say the same at import, each in its own way: said once here
            warnings.filterwarnings("ignore", message="IProgress not found")
            logging.getLogger("ray.widgets.util").setLevel(logging.WARNING)
            c = Console(stderr=True, force_jupyter=False, force_terminal=False)
            c.print("robustgrid: live progress in Jupyter needs ipywidgets (pip install ipywidgets); without it "
                    "each progress bar is printed when it ends", highlight=False)
    return c


console = _console()


class LiveDisplay(Live):
    """rich's Live, whose last line is closed whatever the output is: rich ends a live display with a
    newline only on a terminal, so in a file or a pipe the next message (`interrupted.`, the next table)
    was glued to the table's last border."""

    def stop(self) -> None:
        was_started = self._started
        super().stop()
        if was_started and not self.console.is_terminal and not self.console.is_jupyter:
            self.console.line()


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
