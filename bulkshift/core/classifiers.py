"""Classifiers that turn features and current labels into probabilities.

Every classifier is trained on all images with their *current* folder as label (the
method's pool-based rounds) and must return probabilities over the full label set,
including labels that no image has at the moment: a folder may be empty now and still
be the right destination for an image.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier


class UnknownClassifierError(ValueError):
    """Raised when a classifier name is not one of :data:`CLASSIFIERS`."""


def _logistic_regression(seed: int) -> ClassifierMixin:
    # Scaling lets lbfgs converge in few iterations on VGG16 activations, whose
    # magnitudes differ by orders between channels.
    return make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=200, random_state=seed)
    )


def _mlp(seed: int) -> ClassifierMixin:
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(100,),
            activation="relu",
            solver="adam",
            max_iter=60,
            random_state=seed,
        ),
    )


def _decision_tree(seed: int) -> ClassifierMixin:
    return DecisionTreeClassifier(criterion="gini", random_state=seed)


def _svm(seed: int) -> ClassifierMixin:
    # TODO(scikit-learn 1.11): SVC(probability=True) is deprecated in favour of
    # CalibratedClassifierCV(SVC(), ensemble=False), whose folds fail on labels with
    # fewer images than folds (common early in a project); switch when that is handled.
    return make_pipeline(
        StandardScaler(), SVC(kernel="rbf", probability=True, random_state=seed)
    )


def _knn(seed: int) -> ClassifierMixin:
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=10))


def _calibrated_forest(seed: int) -> ClassifierMixin:
    forest = RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1)
    return CalibratedClassifierCV(forest, method="sigmoid", cv=3)


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    build: Callable[[int], ClassifierMixin]
    description: str


CLASSIFIERS: dict[str, ClassifierSpec] = {
    spec.name: spec
    for spec in (
        ClassifierSpec("lr", _logistic_regression, "logistic regression (lbfgs)"),
        ClassifierSpec("mlp", _mlp, "multi-layer perceptron, 100 ReLU units, Adam"),
        ClassifierSpec("dt", _decision_tree, "decision tree, gini"),
        ClassifierSpec("svm", _svm, "RBF support vector machine, Platt probabilities"),
        ClassifierSpec("knn", _knn, "10 nearest neighbours"),
        ClassifierSpec(
            "rf-cal", _calibrated_forest, "random forest, sigmoid-calibrated"
        ),
    )
}


def get_classifier(name: str) -> ClassifierSpec:
    """Return the classifier called ``name``, or explain which names exist."""
    try:
        return CLASSIFIERS[name]
    except KeyError:
        known = ", ".join(CLASSIFIERS)
        raise UnknownClassifierError(
            f"unknown classifier {name!r}; choose one of: {known}"
        ) from None


class LabelModel:
    """A classifier whose probabilities always cover ``n_labels`` labels.

    Parameters
    ----------
    name : str
        One of :data:`CLASSIFIERS`.
    n_labels : int
        Size of the full label set; labels are ``0 .. n_labels - 1``.
    random_state : int, default=0
    """

    def __init__(self, name: str, n_labels: int, random_state: int = 0):
        self.spec = get_classifier(name)
        if n_labels < 1:
            raise ValueError(f"n_labels must be at least 1, got {n_labels}")
        self.n_labels = n_labels
        self.random_state = random_state
        self._estimator: ClassifierMixin | None = None
        self._only_label: int | None = None

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        sample_weight: np.ndarray | None = None,
    ) -> "LabelModel":
        """Train on ``features`` (n_images, n_features) with current ``labels``.

        ``sample_weight`` is passed to classifiers that accept one (all but k-NN and
        the calibrated forest, which then train unweighted).
        """
        labels = np.asarray(labels, dtype=int)
        if len(features) != len(labels):
            raise ValueError(
                f"{len(features)} feature rows but {len(labels)} labels; pass one "
                "label "
                "per image"
            )
        if len(labels) == 0:
            raise ValueError("cannot train on zero images; label at least one first")
        out_of_range = labels[(labels < 0) | (labels >= self.n_labels)]
        if out_of_range.size:
            raise ValueError(
                f"label index {out_of_range[0]} is outside 0..{self.n_labels - 1}"
            )

        present = np.unique(labels)
        if present.size == 1:
            # scikit-learn refuses a single class; every image then has that label
            # with certainty, which is also what a person sees.
            self._only_label, self._estimator = int(present[0]), None
            return self

        self._only_label = None
        self._estimator = self.spec.build(self.random_state)
        with warnings.catch_warnings():
            # Rounds retrain with a small iteration budget on purpose: the ranking,
            # not the last digit of the loss, is what matters.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message=".*probability.*deprecated")
            self._estimator.fit(
                features, labels, **self._weight_arguments(sample_weight)
            )
        return self

    def _weight_arguments(self, sample_weight: np.ndarray | None) -> dict:
        if sample_weight is None:
            return {}
        estimator = self._estimator
        final = estimator.steps[-1] if hasattr(estimator, "steps") else None
        final_estimator = final[1] if final else estimator
        if "sample_weight" not in inspect.signature(final_estimator.fit).parameters:
            return {}
        if isinstance(final_estimator, CalibratedClassifierCV):
            return {}
        key = f"{final[0]}__sample_weight" if final else "sample_weight"
        return {key: sample_weight}

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n_images, n_labels); unseen labels get 0."""
        if self._estimator is None and self._only_label is None:
            raise RuntimeError("LabelModel.predict_proba called before fit")

        probabilities = np.zeros((len(features), self.n_labels))
        if self._only_label is not None:
            probabilities[:, self._only_label] = 1.0
            return probabilities

        known = self._estimator.predict_proba(features)
        probabilities[:, self._estimator.classes_.astype(int)] = known
        return probabilities


def make_label_model(name: str, n_labels: int, random_state: int = 0) -> LabelModel:
    """Build the classifier called ``name`` for ``n_labels`` labels."""
    return LabelModel(name, n_labels, random_state=random_state)


def confirmed_weights(
    confirmed: np.ndarray | None, confirmed_weight: float
) -> np.ndarray | None:
    """Training weights: ``confirmed_weight`` for person-confirmed labels, else 1.

    None (unweighted training) when nothing is confirmed or the weight is 1.
    """
    if confirmed is None or confirmed_weight == 1.0:
        return None
    return np.where(np.asarray(confirmed, dtype=bool), confirmed_weight, 1.0)


def pool_probabilities(
    features: np.ndarray,
    current_labels: np.ndarray,
    n_labels: int,
    classifier: str,
    *,
    confirmed: np.ndarray | None = None,
    confirmed_weight: float = 1.0,
    out_of_fold: int = 0,
    random_state: int = 0,
) -> np.ndarray:
    """Probabilities for every image of the pool, trained on the current labels.

    Parameters
    ----------
    features : ndarray of shape (n_images, n_features)
    current_labels : ndarray of int of shape (n_images,)
    n_labels : int
    classifier : str
    confirmed : ndarray of bool of shape (n_images,), optional
        Labels a person confirmed; weighted by ``confirmed_weight``.
    confirmed_weight : float, default=1.0
        Weight of a confirmed label relative to a machine label (1 = the paper).
    out_of_fold : int, default=0
        0 trains once and predicts in-sample (the paper). k >= 2 predicts each image
        with a model trained on the other k - 1 folds, so a misplaced image is judged
        by its neighbours instead of by its own, memorised, wrong label.
    random_state : int, default=0

    Returns
    -------
    ndarray of shape (n_images, n_labels)
    """
    current_labels = np.asarray(current_labels, dtype=int)
    weights = confirmed_weights(confirmed, confirmed_weight)

    if out_of_fold < 2:
        model = make_label_model(classifier, n_labels, random_state=random_state)
        return model.fit(features, current_labels, weights).predict_proba(features)

    n_images = len(current_labels)
    folds = np.random.default_rng(random_state).permutation(n_images) % out_of_fold
    probabilities = np.empty((n_images, n_labels))
    for fold in range(out_of_fold):
        held_out = folds == fold
        model = make_label_model(classifier, n_labels, random_state=random_state)
        model.fit(
            features[~held_out],
            current_labels[~held_out],
            None if weights is None else weights[~held_out],
        )
        probabilities[held_out] = model.predict_proba(features[held_out])
    return probabilities
