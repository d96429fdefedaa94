# The lighthpc worker AMI: Amazon Linux 2023 (x86_64) + Python 3.11 venv + the agent, its
# built-in apps and the shared chalicelib, started by systemd once the launch template's user
# data has run /opt/lighthpc/bin/lighthpc-bootstrap.
#
#   packer build worker_ami/packer                  # from the repository root
#   packer build -var region=eu-west-1 worker_ami/packer
#
# Packer 1.6.6 (Debian's, used by CI) has the amazon builder built in: no `packer init`. Newer
# Packer ships without it: install it once with `packer plugins install github.com/hashicorp/amazon`
# (a `packer { required_plugins {...} }` block would let `packer init` do that, but 1.6.6 refuses
# the block). CI runs `packer validate -syntax-only`: 1.6.6's amazon builder predates
# metadata_options, imds_support and temporary_security_group_source_public_ip, so its full
# validate would reject them; newer Packer validates them fully.

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the AMI is built (and registered) in; the stack must be in the same one."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Build instance only; workers use the launch template's types."
}

variable "ami_name_prefix" {
  type        = string
  default     = "lighthpc-worker"
  description = "The AMI is named <prefix>-<UTC timestamp>, so every build registers a new one."
}

variable "source_ami_name" {
  type        = string
  default     = "al2023-ami-2023.*-x86_64"
  description = "Name filter for Amazon's AL2023 AMIs (excludes the minimal and ECS variants)."
}

variable "volume_size" {
  type        = number
  default     = 8
  description = "GiB of the AMI's root volume; the launch template may grow it for scratch."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the encrypted boot volume; empty uses the account's aws/ebs key."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty uses the default VPC."
}

variable "stage" {
  type        = string
  default     = "dev"
  description = "Recorded as a tag only: one AMI serves any stage (settings come at boot)."
}

variable "source_revision" {
  type        = string
  default     = "unknown"
  description = "Commit the AMI was baked from (pass -var source_revision=$(git rev-parse HEAD))."
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  # Where the file provisioners put things on the build instance; provision.sh reads it as
  # BUILD_DIR and removes it when done.
  staging = "/tmp/lighthpc-build"
  repo    = "${path.root}/../.."
  tags = {
    "lighthpc:component"       = "worker-ami"
    "lighthpc:stage"           = var.stage
    "lighthpc:source-revision" = var.source_revision
  }
}

source "amazon-ebs" "worker" {
  region          = var.region
  instance_type   = var.instance_type
  subnet_id       = var.subnet_id
  ami_name        = "${var.ami_name_prefix}-${local.timestamp}"
  ami_description = "lighthpc worker agent on Amazon Linux 2023 (${var.source_revision})"
  ssh_username    = "ec2-user"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # The build instance answers IMDSv2 only, and instances launched from the AMI default to it
  # (the agent speaks IMDSv2; v1 is only an SSRF risk here).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"

  # Encrypted from the first write, and the registered snapshot too.
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    iops                  = 3000 # gp3's free baseline; 1.6.6 insists on both being set
    throughput            = 125
    encrypted             = true
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }
  encrypt_boot = true
  kms_key_id   = var.kms_key_id

  ena_support   = true
  sriov_support = true
  # SSH to the build instance from this machine's address only, not 0.0.0.0/0.
  temporary_security_group_source_public_ip = true

  tags = merge(local.tags, {
    Name       = "${var.ami_name_prefix}-${local.timestamp}"
    source_ami = "{{ .SourceAMI }}"
  })
  snapshot_tags = local.tags
  run_tags      = merge(local.tags, { Name = "packer-${var.ami_name_prefix}" })
}

build {
  sources = ["source.amazon-ebs.worker"]

  # The file provisioner uploads a directory only into one that exists.
  provisioner "shell" {
    inline = ["rm -rf ${local.staging}", "mkdir -p ${local.staging}"]
  }

  # Code: the shared package and the worker package (agent, runner, metadata, built-in apps).
  provisioner "file" {
    source      = "${local.repo}/chalicelib"
    destination = "${local.staging}/"
  }
  provisioner "file" {
    source      = "${local.repo}/worker_ami"
    destination = "${local.staging}/"
  }
  # Runtime deps: worker_ami/requirements.txt (uploaded with its directory above) pulls in
  # ../requirements.txt with -r, so that one goes next to the directory.
  provisioner "file" {
    source      = "${local.repo}/requirements.txt"
    destination = "${local.staging}/requirements.txt"
  }
  # The boot side: systemd unit and the bootstrap the user data calls.
  provisioner "file" {
    source      = "${path.root}/../lighthpc-worker.service"
    destination = "${local.staging}/lighthpc-worker.service"
  }
  provisioner "file" {
    source      = "${path.root}/../bootstrap.sh"
    destination = "${local.staging}/lighthpc-bootstrap"
  }

  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["BUILD_DIR=${local.staging}"]
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
  }
}
