"""Where the plugin's docks sit: in a scroll area each, and as tabs of one dock area.

Added from the Plugins menu, napari puts a second dock below the first and shares the height
between them: at napari's default window size the fine-tuning dock got ~60 px and the
prediction dock's last buttons were clipped.  Tabbed, each dock has the whole height; within
it, a scroll area keeps every control reachable on a small screen.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QScrollArea, QVBoxLayout, QWidget

#: set on the plugin's dock widgets, so each finds the others
MARKER = "_napari_dkan_dock"


class _VerticalScroll(QScrollArea):
    """Scrolls vertically only, and is always as wide as its content needs (which grows when a
    model or a long path is shown): a dock never clips its controls sideways."""

    def eventFilter(self, watched: Any, event: Any) -> bool:
        # the content's layout changed (a row appeared, a label grew): the dock must hear that
        # this widget's minimum width changed, or the new content is clipped at the right
        if event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return False

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        width = inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 2
        return QSize(max(hint.width(), width), hint.height())


def place_in_scroll_area(owner: QWidget, inner: QWidget) -> QScrollArea:
    """Make ``inner`` the scrolled content of ``owner`` (vertical scrolling only)."""
    scroll = _VerticalScroll(widgetResizable=True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setWidget(inner)
    inner.installEventFilter(scroll)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    setattr(owner, MARKER, True)
    return scroll


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def tabify_now(widget: QWidget) -> bool:
    """Tab ``widget``'s dock with the plugin's other docks in the same area; True if it did."""
    dock = _dock_of(widget)
    window = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(window, QMainWindow):
        return False
    area = window.dockWidgetArea(dock)
    siblings = [d for d in window.findChildren(QDockWidget)
                if d is not dock and d.isVisible() and window.dockWidgetArea(d) == area
                and _is_plugin_dock(d)]
    tabbed = set(window.tabifiedDockWidgets(dock))
    for sibling in siblings:
        if sibling not in tabbed:
            window.tabifyDockWidget(sibling, dock)
            tabbed |= set(window.tabifiedDockWidgets(dock))
    dock.raise_()
    return bool(siblings)


def tabify_with_siblings(widget: QWidget) -> None:
    """Once napari has docked ``widget`` (after this event-loop turn), tab it with the others."""
    timer = QTimer(widget, singleShot=True, interval=0)  # dies with the widget: no late call
    timer.timeout.connect(lambda: tabify_now(widget))
    timer.start()


def _is_plugin_dock(dock: QDockWidget) -> bool:
    content: Any = dock.widget()
    if content is None:
        return False
    return any(getattr(w, MARKER, False) for w in (content, *content.findChildren(QWidget)))
