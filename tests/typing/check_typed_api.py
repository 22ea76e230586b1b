"""Checked by mypy, not run: the typed API's types are what users see (make check)."""

from __future__ import annotations

from typing import assert_type

import torch
from torch import nn

import client as sy
from client import typed as tf
from client.federated.dataset import FederatedDataset
from client.multipointer import MultiPointerTensor
from client.pointer import PointerTensor


def typed_api(bob: sy.VirtualWorker, alice: sy.FleetWorker) -> None:
    pointer = tf.send(torch.ones(3), bob)
    assert_type(pointer, PointerTensor)
    assert_type(tf.move(pointer, alice), PointerTensor)
    assert_type(tf.get(pointer), torch.Tensor)
    assert_type(pointer.location, sy.BaseWorker)
    assert_type(pointer.id_at_location, int)
    assert_type(tf.send_to_each(torch.ones(3), [bob, alice]), MultiPointerTensor)
    model = tf.send_model(nn.Linear(2, 1), bob)
    assert_type(model, nn.Linear)
    assert_type(tf.get_model(model), nn.Linear)
    data = torch.utils.data.TensorDataset(torch.ones(4, 2), torch.ones(4))
    assert_type(tf.federate(data, [bob, alice]), FederatedDataset)
