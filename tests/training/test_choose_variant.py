"""The release's choice between attention variants (training.starts.choose_variant)."""

from __future__ import annotations

from training.starts import choose_variant


def result(**starts: tuple[float, float]) -> dict:
    return {
        "models": {
            name: {"start": {"1": {"bits_per_character": a}, "2-4": {"bits_per_character": b}}}
            for name, (a, b) in starts.items()
        }
    }


def test_lowest_loss_among_variants_that_start_as_well_as_the_seed():
    measured = result(seed=(3.0, 2.0), plain=(4.0, 2.1), starts=(2.9, 1.9), other=(2.5, 1.5))
    pick, why = choose_variant(measured, {"plain": 1.10, "starts": 1.12, "other": 1.15}, "seed")
    assert pick == "starts"  # plain has the lowest loss but starts worse than the seed
    assert "no worse than seed" in why and "plain: validation loss 1.1000" in why


def test_worse_at_either_bucket_is_out():
    measured = result(seed=(3.0, 2.0), a=(2.0, 2.5), b=(3.0, 2.0))
    assert choose_variant(measured, {"a": 1.0, "b": 1.2}, "seed")[0] == "b"  # equal is fine


def test_no_variant_as_good_as_the_seed_falls_back_to_the_loss_and_says_so():
    measured = result(seed=(1.0, 1.0), a=(2.0, 2.0), b=(3.0, 3.0))
    pick, why = choose_variant(measured, {"a": 1.3, "b": 1.2}, "seed")
    assert pick == "b" and "no variant reads a text's start as well as seed" in why
