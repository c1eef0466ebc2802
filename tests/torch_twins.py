"""PyTorch twins of the fastconv models, written with torch.nn only (state_dict names
match ours), shared by tests/test_models.py and benchmarks/bench_train.py. Needs torch."""


def torch_models(torch):
    tnn = torch.nn

    def lenet5():
        return tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(),
                              tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84),
                              tnn.ReLU(), tnn.Linear(84, 10))

    def simple_cnn():
        return tnn.Sequential(tnn.Conv2d(1, 16, 5, padding=2), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Conv2d(16, 32, 5, padding=2), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Flatten(), tnn.Linear(1568, 10))

    class CifarBlock(tnn.Module):
        def __init__(self, cin, c, s):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(cin, c, 3, s, 1, bias=False), tnn.BatchNorm2d(c)
            self.conv2, self.bn2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False), tnn.BatchNorm2d(c)
            self.extra = c - cin

        def forward(self, x):
            o = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            if self.extra:  # option A: subsample, zero-pad channels
                lo = self.extra // 2
                x = tnn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, lo, self.extra - lo))
            return torch.relu(o + x)

    class CifarResNet(tnn.Module):
        def __init__(self, n=3):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16)
            cin, stages = 16, []
            for i, c in enumerate((16, 32, 64)):
                blocks = []
                for j in range(n):
                    blocks.append(CifarBlock(cin, c, 2 if i and not j else 1))
                    cin = c
                stages.append(tnn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = stages
            self.fc = tnn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.fc(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))

    class Block(tnn.Module):
        def __init__(self, cin, c, s):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(cin, c, 3, s, 1, bias=False), tnn.BatchNorm2d(c)
            self.conv2, self.bn2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False), tnn.BatchNorm2d(c)
            self.downsample = (tnn.Sequential(tnn.Conv2d(cin, c, 1, s, bias=False), tnn.BatchNorm2d(c))
                               if s != 1 or cin != c else None)

        def forward(self, x):
            o = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(o + (self.downsample(x) if self.downsample is not None else x))

    class ResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64)
            cin, layers = 64, []
            for c, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers.append(tnn.Sequential(Block(cin, c, s), Block(c, c, 1)))
                cin = c
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = tnn.Linear(512, 10)

        def forward(self, x):
            x = tnn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            return self.fc(self.layer4(self.layer3(self.layer2(self.layer1(x)))).mean((2, 3)))

    return {"lenet5": lenet5, "simple_cnn": simple_cnn, "resnet20": CifarResNet, "resnet18": ResNet18}
