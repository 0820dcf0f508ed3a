/* SPDX-License-Identifier: MIT */
#ifndef QCOW2_FORMAT_H
#define QCOW2_FORMAT_H
#endif
