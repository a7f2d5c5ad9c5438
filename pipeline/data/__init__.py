"""Dataset readers (VOC, COCO, VOC-layout folders) behind one interface: see pipeline.data.datasets."""
