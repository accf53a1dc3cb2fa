"""The shared figure helpers: a cut axis names exactly the curves that leave it; a panel grid shows
one titled panel per name, labelled on its outer edges only."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from locoprop.experiments.plotting import cut_loss_axis, panel_grid  # noqa: E402


def test_cut_loss_axis_sets_the_top_and_names_the_curves_above_it():
    frame = pd.DataFrame({"optimizer": pd.Categorical(["A", "A", "B", "B", "C"], ["A", "B", "C", "D"]),
                          "epoch": [0, 1, 0, 1, 0], "train_loss": [500.0, 900.0, 500.0, 200.0, 574.0]})
    fig, ax = plt.subplots()
    ax.plot(frame["epoch"], frame["train_loss"])
    low = ax.get_ylim()[0]
    cut = cut_loss_axis(ax, frame, top=574.0)
    assert ax.get_ylim() == (low, 574.0)
    assert cut == {"A": 900.0}  # C reaches the top but does not leave the axis; D has no rows
    plt.close(fig)


def test_panel_grid_titles_one_panel_per_name_and_labels_the_outer_edges():
    names = [f"opt {i}" for i in range(7)]
    fig, panels = panel_grid(names, "epochs", "loss", cols=5, sharey=True)
    assert [ax.get_title() for ax in panels] == names
    grid = fig.axes  # row-major: 2 rows of 5
    assert len(grid) == 10
    assert [ax.axison for ax in grid] == [True] * 7 + [False] * 3
    assert [ax.get_ylabel() for ax in grid] == ["loss", "", "", "", "", "loss", "", "", "", ""]
    assert [ax.get_xlabel() for ax in grid] == [""] * 5 + ["epochs"] * 5
    plt.close(fig)
