"""Naming the k-means folders: what each folder is called, and the label set after.

Pure functions (no Redis, no Label Studio): the service and the naming page call them,
the tests check them on hand-made folders.

A person gives each folder either a name ("Bag") or a merge into another folder
("merge into Cluster 10"). A merged folder takes the *final* name of its target, so
chains (16 -> 10 -> "Bag") resolve and cycles are refused with the folders named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bulk_shift_plugin.errors import NamingError

# Values of the "merge into" dropdown: a folder by number, or an existing label.
CLUSTER_PREFIX = "cluster:"
LABEL_PREFIX = "label:"


def cluster_choice(number: int) -> str:
    """The dropdown value that merges into folder ``number``."""
    return f"{CLUSTER_PREFIX}{int(number)}"


def label_choice(name: str) -> str:
    """The dropdown value that merges into the existing label ``name``."""
    return f"{LABEL_PREFIX}{name}"


def folder_choices(
    typed: Mapping[int, str], merges: Mapping[int, str]
) -> dict[int, str]:
    """One choice per folder from the naming form: a merge wins over a typed name."""
    choices = {}
    for number in set(typed) | set(merges):
        merge = (merges.get(number) or "").strip()
        name = (typed.get(number) or "").strip()
        if merge or name:
            choices[int(number)] = merge or name
    return choices


def resolve_folder_names(
    clusters: list[dict],
    choices: Mapping[int, str],
    previous: Mapping[str, str] | None = None,
) -> dict[int, str]:
    """The final label name of every folder the person named or merged.

    Parameters
    ----------
    clusters : list of dict
        The backend's folders, ``{"cluster": number, "name": "Cluster 01", ...}``.
    choices : dict of int to str
        Folder number -> a label name, ``"cluster:N"`` (merge into folder N),
        ``"label:X"`` (merge into the existing label X) or another folder's own name
        such as ``"Cluster 10"`` (also a merge into that folder).
    previous : dict of str to str, optional
        Names given at an earlier naming (folder number as text -> name): the name
        of a merge target the person did not retype.

    Returns
    -------
    dict of int to str
        Folder number -> label name, for the folders in ``choices``.

    Raises
    ------
    NamingError
        A merge into an unknown folder, a cycle of merges, or a merge into a folder
        that has no name.
    """
    previous = previous or {}
    display = {int(c["cluster"]): c["name"] for c in clusters}
    number_of_name = {name: number for number, name in display.items()}

    # Each choice becomes ("folder", N) or ("name", text).
    targets: dict[int, tuple[str, int | str]] = {}
    for number, choice in choices.items():
        number = int(number)
        if number not in display:
            raise NamingError(
                f"there is no folder {number}; the folders are numbered "
                f"{min(display, default=0)}..{max(display, default=0)}. Reload the "
                "naming page: the backend may have sorted the images again"
            )
        choice = choice.strip()
        if choice.startswith(CLUSTER_PREFIX):
            target = choice.removeprefix(CLUSTER_PREFIX)
            if not target.isdigit() or int(target) not in display:
                raise NamingError(
                    f"{display[number]} is merged into an unknown folder "
                    f"{target!r}; choose a folder listed on the page"
                )
            targets[number] = ("folder", int(target))
        elif choice.startswith(LABEL_PREFIX):
            targets[number] = ("name", choice.removeprefix(LABEL_PREFIX).strip())
        elif choice in number_of_name:
            targets[number] = ("folder", number_of_name[choice])
        else:
            targets[number] = ("name", choice)

    resolved: dict[int, str] = {}
    for number in targets:
        resolved[number] = _final_name(number, targets, display, previous)
    for number, name in resolved.items():
        if not name:
            raise NamingError(f"{display[number]} got an empty name; type a name")
    return resolved


def _final_name(
    start: int,
    targets: Mapping[int, tuple[str, int | str]],
    display: Mapping[int, str],
    previous: Mapping[str, str],
) -> str:
    chain = [start]
    current = start
    while True:
        kind, value = targets.get(current, ("unnamed", current))
        if kind == "name":
            return str(value)
        if kind == "unnamed":
            name = previous.get(str(current))
            if name:
                return name
            route = " -> ".join(display[n] for n in chain)
            raise NamingError(
                f"{route}: {display[current]} has no name yet; type a name for "
                f"{display[current]}, or merge {display[start]} into a named folder"
            )
        if value in chain:
            cycle = chain[chain.index(value) :] + [value]
            raise NamingError(
                "these folders are merged into each other in a circle: "
                + " -> ".join(display[n] for n in cycle)
                + "; type a name for one of them"
            )
        chain.append(int(value))
        current = int(value)


def naming_label_set(
    configured: Iterable[str],
    folder_names: Mapping[int, str],
    cluster_names: Iterable[str],
    retired_names: Iterable[str] = (),
    in_use: Iterable[str] = (),
) -> list[str]:
    """The project's labels after naming: the folder names, then other kept labels.

    Parameters
    ----------
    configured : iterable of str
        The labeling config's choices now, in order.
    folder_names : dict of int to str
        Every named folder's name (this naming and earlier ones), by folder number.
    cluster_names : iterable of str
        The folders' own names ("Cluster 01"...): dropped, they are no categories.
    retired_names : iterable of str
        Names earlier namings gave that no folder carries any more (a rename).
    in_use : iterable of str
        Labels some task keeps after the naming: never dropped, or Label Studio
        would hold annotations its config cannot show.

    Returns
    -------
    list of str
        The folder names in folder order (they get the keyboard shortcuts), then the
        configured labels a person added, in their order.
    """
    names = list(dict.fromkeys(folder_names[n] for n in sorted(folder_names)))
    dropped = set(cluster_names) | set(retired_names)
    keep = set(in_use)
    for name in configured:
        if name not in names and (name not in dropped or name in keep):
            names.append(name)
    names.extend(sorted(keep - set(names)))
    return names
