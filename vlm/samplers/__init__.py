"""Decoding strategies as small serializable objects.

    vlm.samplers.get("beam")                     # BeamSampler(num_beams=4)
    vlm.samplers.get("top_k", k=5, seed=1)       # TopKSampler(k=5, ...)
    vlm.samplers.get(vlm.samplers.serialize(s))  # a round trip
"""

import keras

from vlm.samplers.beam_sampler import BeamSampler
from vlm.samplers.greedy_sampler import GreedySampler
from vlm.samplers.sampler import Sampler
from vlm.samplers.top_k_sampler import TopKSampler
from vlm.samplers.top_p_sampler import TopPSampler

ALIASES = {
    "greedy": GreedySampler,
    "beam": BeamSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}


def serialize(sampler):
    """A JSON-able dict for `deserialize` / `get`."""
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config):
    return keras.saving.deserialize_keras_object(config)


def get(identifier, **kwargs):
    """A `Sampler` from a name, a serialized dict or a sampler.

    Args:
        identifier: "greedy", "beam", "top_k" or "top_p"; a dict from
            `serialize`; or a `Sampler`, returned as is.
        **kwargs: constructor arguments, with a name only (for example
            `get("beam", num_beams=2)`).

    Raises:
        ValueError: an unknown name, or arguments the sampler does not take,
            naming them and what it takes.
    """
    if isinstance(identifier, Sampler) and not kwargs:
        return identifier
    if isinstance(identifier, dict) and not kwargs:
        sampler = deserialize(identifier)
        if isinstance(sampler, Sampler):
            return sampler
    if isinstance(identifier, str) and identifier in ALIASES:
        cls = ALIASES[identifier]
        allowed = tuple(cls().get_config())
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(
                f"Sampler {identifier!r} takes {list(allowed) or 'no arguments'}, not "
                f"{unknown}. Received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}")
        return cls(**kwargs)
    raise ValueError(
        f"`sampler` must be one of {list(ALIASES)}, a `vlm.samplers.Sampler` or its "
        f"serialized dict. Received: sampler={identifier!r}"
        + (f" with {kwargs}" if kwargs else ""))


__all__ = ["ALIASES", "BeamSampler", "GreedySampler", "Sampler", "TopKSampler",
           "TopPSampler", "deserialize", "get", "serialize"]
