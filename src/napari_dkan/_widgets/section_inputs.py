"""The dock's fields for what a section lacks: µm per pixel, the full-resolution image.

Shown only when needed (see :func:`~napari_dkan._widgets.section_facts.section_needs`), prefilled
with a guess when one can be made and explained in words; *Use* hands the values to the dock,
which reopens the section with them.  Also shows the reader's notices about the data.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_dkan._widgets.section_facts import SLIDE_SUFFIXES, Needs

_SHOWN = 3
_LENGTH = 120


def _shorten(text: str) -> str:
    return text if len(text) <= _LENGTH else text[: _LENGTH - 1].rsplit(" ", 1)[0] + " …"


class SectionInputs(QWidget):
    """µm/px and image fields, and the data notices; ``applied(image, mpp)`` on *Use*."""

    applied = Signal(object, object)

    def __init__(self) -> None:
        super().__init__()
        self.notices = QLabel("")
        self.notices.setWordWrap(True)
        self.notices.setStyleSheet("color: #e0a040;")
        self.mpp = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=100.0, singleStep=0.05,
                                  suffix=" µm/px", specialValueText="enter µm/px")
        self.mpp_help = QLabel("")
        self.image = QLineEdit(placeholderText="full-resolution H&E image (.tif, .svs, .jpg…)")
        self.browse = QPushButton("Browse…")
        self.image_help = QLabel("")
        self.use = QPushButton("Use")
        for label in (self.mpp_help, self.image_help):
            label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.notices)
        self._mpp_row = _row(QLabel("µm per pixel:"), self.mpp)
        self._image_row = _row(QLabel("image:"), self.image, self.browse)
        for item in (self._mpp_row, self.mpp_help, self._image_row, self.image_help, self.use):
            layout.addWidget(item)
        self.browse.clicked.connect(self._browse)
        self.use.clicked.connect(self._apply)
        self.show_needs(Needs())
        self.show_notices([])

    # -- state -----------------------------------------------------------------------------
    def show_needs(self, needs: Needs) -> None:
        self.needs = needs
        self._mpp_row.setVisible(needs.mpp)
        self.mpp_help.setVisible(needs.mpp)
        self.mpp_help.setText(needs.mpp_why)
        self.mpp.setValue(needs.mpp_guess or 0.0)
        self._image_row.setVisible(needs.image)
        self.image_help.setVisible(needs.image)
        self.image_help.setText(needs.image_why)
        self.image_help.setToolTip(needs.image_why)
        self.image.setToolTip(needs.image_why)
        self.image.setText(needs.image_guess)
        self.use.setVisible(needs.any)
        self._fit_labels()

    def show_notices(self, notices: list[str]) -> None:
        """The first notices, shortened (the dock is narrow); all of them in the tooltip."""
        shown = [f"• {_shorten(n)}" for n in notices[:_SHOWN]]
        if len(notices) > _SHOWN:
            shown.append(f"… and {len(notices) - _SHOWN} more (hover to read)")
        self.notices.setText("\n".join(shown))
        self.notices.setToolTip("\n\n".join(notices))
        self.notices.setVisible(bool(notices))
        self._fit_labels()

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt's name
        # wrapped labels in a crowded dock get squeezed below their wrapped height (Qt's
        # height-for-width does not reach through the dock); keep every line readable
        super().resizeEvent(event)
        self._fit_labels()

    def _fit_labels(self) -> None:
        width = max(self.width(), 200)
        for label in (self.notices, self.mpp_help, self.image_help):
            label.setMinimumHeight(label.heightForWidth(width) if label.text() else 0)

    # -- actions ---------------------------------------------------------------------------
    def _browse(self) -> None:
        pattern = " ".join(f"*{s}" for s in SLIDE_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self, "Full-resolution image", self.image.text(),
                                              f"Slides ({pattern});;All files (*)")
        if path:
            self.image.setText(path)

    def _apply(self) -> None:
        image = self.image.text().strip() if self.needs.image else None
        mpp = self.mpp.value() if self.needs.mpp else None
        self.applied.emit(image or None, mpp if mpp else None)


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return row
